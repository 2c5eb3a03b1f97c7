; CR3 past the end of RAM: see cr3_outside_ram.inc.
%define CR3_TARGET 0x7fff0000
%define CR3_NAME "past RAM"
%include "cr3_outside_ram.inc"
