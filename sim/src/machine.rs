//! The one interface between the simulator and a state machine under test.
//!
//! Owns: the [`Machine`] trait (three `handle_*` inputs and one `poll_effect` output, the
//! sans-IO shape every `idunno-core` machine has) and the [`Effect`] enum the world executes.
//! The membership machine implements it in `crate::swim`; a consensus log, the file system or
//! the scheduler slot in the same way, and the generic [`crate::world::World`] drives them
//! without knowing what they are.
//! Must never: give a machine a way to read the clock, the RNG or the network other than the
//! arguments of its `handle_*` calls.

use std::fmt::Debug;
use std::hash::Hash;
use std::net::SocketAddr;

use idunno_core::time::Instant;

/// Something the world must do for a machine.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Effect<T, N> {
    /// Put `bytes` on the network towards `to`.
    Send {
        /// Destination address.
        to: SocketAddr,
        /// The datagram.
        bytes: Vec<u8>,
    },
    /// Hand `timer` back through [`Machine::handle_timer`] at `at` (or at once, if `at` has
    /// passed).
    SetTimer {
        /// The timer, opaque to the world.
        timer: T,
        /// When to fire it.
        at: Instant,
    },
    /// Something for the checkers and the machines layered on top (membership events, a
    /// committed entry, an acknowledged write...).
    Notify(N),
}

/// A sans-IO state machine the world can drive.
///
/// Every `handle_*` call is followed by draining [`Machine::poll_effect`] until `None`, in order.
pub trait Machine {
    /// The machine's timer requests, handed back verbatim.
    type Timer: Copy + Debug + Hash;
    /// What the machine reports to the outside.
    type Notify: Clone + Debug + Hash;
    /// Operator commands (join, leave, propose...).
    type Command: Clone + Debug + Hash;
    /// Why an input was refused (counted by the world; the machine's state must not change).
    type Error: Debug;

    /// A datagram arrived from `from`.
    fn handle_datagram(
        &mut self,
        now: Instant,
        from: SocketAddr,
        bytes: &[u8],
    ) -> Result<(), Self::Error>;

    /// A timer this machine asked for fired.
    fn handle_timer(&mut self, now: Instant, timer: Self::Timer) -> Result<(), Self::Error>;

    /// An operator command.
    fn handle_command(&mut self, now: Instant, command: Self::Command) -> Result<(), Self::Error>;

    /// The next effect, in the order the machine decided them; `None` when drained.
    fn poll_effect(&mut self) -> Option<Effect<Self::Timer, Self::Notify>>;
}
