//! Naming the address spaces of one migration.

/// One address space (one process) of a migration, named the same way on
/// both hosts. A single-process migration has one, [`SpaceKey::ROOT`]; a
/// process tree names each process by its pid in the tree's own pid
/// namespace, which is what a restore (CRIU) reports for it on the other
/// host.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct SpaceKey(pub u32);

impl SpaceKey {
    /// The only address space of a single-process migration.
    pub const ROOT: SpaceKey = SpaceKey(0);
}

impl std::fmt::Display for SpaceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if *self == SpaceKey::ROOT {
            f.write_str("the process")
        } else {
            write!(f, "process {} of the tree", self.0)
        }
    }
}
