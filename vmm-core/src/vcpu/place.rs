//! Where a vCPU is in its exit loop, for a host that runs a VM's vCPUs at
//! the same time (one thread or one host CPU each).

/// Where a vCPU is in its exit loop, as the other vCPUs of its VM see it:
/// the state a host keeps for each vCPU, beside what last woke it, when it
/// drives the loop's two halves itself ([`super::prepare_entry`] and
/// [`super::handle_exit`]) for several vCPUs at once. It says what the
/// vCPU needs when something new waits for it (an interrupt, an NMI, INIT
/// or a start-up IPI, a reset): one in its guest is kicked out, one asleep
/// is woken, one busy sees it for itself before it enters again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VcpuPlace {
    /// Preparing an entry or handling an exit (it looks at what waits for
    /// it before it enters again), waiting for its turn of a host CPU, or
    /// not started yet.
    Busy,
    /// In its guest, or about to be (the host has let go of what the vCPUs
    /// share to enter it): something new for it needs a kick.
    Guest,
    /// Halted, or waiting for a start-up IPI: something new for it needs a
    /// wake-up.
    Asleep,
    /// Was asleep and has been woken, because something new waits for it,
    /// and is not yet back in its loop (it needs no second wake-up).
    Waking,
}
