//! Reconcilers that turn services into tasks: replicated, global, restarts, rolling updates and
//! rollbacks, and the task reaper.
