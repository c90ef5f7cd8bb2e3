//! One file per verb: parse arguments, call the libraries, print.

pub mod df;
pub mod fsck;
pub mod gc;
pub mod images;
pub mod mount;
pub mod pull;
pub mod rmi;
pub mod serve;
pub mod umount;
pub mod version;
