//! dbps operator library.
