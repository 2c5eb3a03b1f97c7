; port_sweep.asm with every byte value written to every port (slow suite).
%define FULL
%include "port_sweep.asm"
