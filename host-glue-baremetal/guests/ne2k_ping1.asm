; NE2000 pass-through guest 1 (see ne2k_ping.inc).
%define VM_TAG '1'
%include "ne2k_ping.inc"

