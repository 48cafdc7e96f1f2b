//! The datapath of one node (see the crate description). Filled in by the datapath work.
