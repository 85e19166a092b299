//! The scheduler: assigns pending tasks to nodes through a filter pipeline, then spreads them;
//! explains why a task cannot be placed.
