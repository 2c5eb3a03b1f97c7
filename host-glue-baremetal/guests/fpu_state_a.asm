; Extended-state isolation guest A (see fpu_state.inc).
%define VM_TAG 'a'
%include "fpu_state.inc"
