; NE2000 pass-through guest 0 (see ne2k_ping.inc).
%define VM_TAG '0'
%include "ne2k_ping.inc"

