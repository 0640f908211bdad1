//! pagehop's integration tests live in `privileged/` (one test target); this
//! library is empty.
