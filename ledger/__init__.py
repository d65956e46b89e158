"""The ledger: off-chain CTP database, escrow, consensus and the block log."""
