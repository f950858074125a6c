//! The method, free of I/O: acquisition scores and strategies, DPO losses, the trainer, the optimizer.
