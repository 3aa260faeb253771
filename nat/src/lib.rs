//! The nftables layer of rnet: one table of ours (`inet rnet`), sets and maps so that
//! per-container work is an element change. See DESIGN.md §6.
