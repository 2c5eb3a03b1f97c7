; Extended-state isolation guest B (see fpu_state.inc).
%define VM_TAG 'b'
%include "fpu_state.inc"
