//! The command line's spellings of the engine's option enums. The library
//! types stay free of clap; each mirror here converts into its library type.
use pagehop::Mode;
use pagehop::ZeroCopy;
use pagehop::source::tracker::Backend;
use pagehop::wire::batch::Compress;

/// Declares a clap value enum that mirrors a library enum variant by variant.
macro_rules! mirror {
    ($(#[$meta:meta])* $name:ident => $lib:ty { $($(#[$vmeta:meta])* $variant:ident),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
        pub enum $name {
            $($(#[$vmeta])* $variant),*
        }

        impl From<$name> for $lib {
            fn from(choice: $name) -> Self {
                match choice {
                    $($name::$variant => <$lib>::$variant),*
                }
            }
        }
    };
}

mirror! {
    /// `--backend`.
    BackendArg => Backend {
        /// eBPF write-fault events guide an atomic PAGEMAP_SCAN re-arm (default).
        Ebpf,
        /// PAGEMAP_SCAN with write-protect matching over all tracked memory.
        PagemapScan,
        /// The kernel's soft-dirty bits (only where CONFIG_MEM_SOFT_DIRTY is on).
        SoftDirty,
        /// No tracking: every resident page is dirty in every interval.
        None,
    }
}

mirror! {
    /// `--mode`.
    ModeArg => Mode {
        /// Rounds until converged, then stop and copy the rest.
        Precopy,
        /// Stop at once; pages follow on demand and in the background.
        Postcopy,
        /// Pre-copy the pages that are not write-hot, then post-copy the rest.
        Hybrid,
        /// Stop at once, send every page, then start the destination (the baseline).
        StopAndCopy,
    }
}

mirror! {
    /// `--zerocopy`.
    ZeroCopyArg => ZeroCopy {
        /// Start with zero-copy sends; fall back when the kernel copies anyway.
        Auto,
        On,
        Off,
    }
}

mirror! {
    /// `--compress`.
    CompressArg => Compress {
        /// lz4 where a batch shrinks; batches that do not are sent raw.
        Auto,
        Lz4,
        Off,
    }
}
