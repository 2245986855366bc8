//! Page-level copy-on-write guest memory: how a forked VM shares its parent's pages and pays
//! only for the pages it writes.
//!
//! A VM's memory is a **view**: a full-size base memfd and a stack of frozen **layers** (sparse
//! memfds holding the pages some ancestor wrote after the layer below was frozen), mapped
//! `MAP_PRIVATE` into one contiguous range ([`CowMapping`]): each page comes from the topmost
//! layer that holds it, and the VM's own first write to a page makes a private copy (the
//! kernel's copy-on-write). Views and layers are immutable once made, so any number of VMs map
//! them at once and none ever sees another's writes.
//!
//! Forking a VM freezes what it has written since its view was made ([`dirty_runs`], read with
//! `PAGEMAP_SCAN`) into a new layer ([`Layer::freeze`]) and gives parent and child a view with
//! that layer on top. See DESIGN.md for the measured costs and why this design.
//!
//! This crate never depends on the VMM.

#![deny(missing_docs)]

mod error;
mod layer;
mod mapping;
mod pagemap;
mod runs;
mod tracker;
mod view;

pub use error::CowError;
pub use layer::Layer;
pub use mapping::CowMapping;
pub use pagemap::{dirty_runs, usage, MemoryUsage};
pub use runs::{PageRun, PAGE_SIZE};
pub use tracker::WriteTracker;
pub use view::View;
