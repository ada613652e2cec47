"""The workbench: demand simulation, replay, DST sweeps, benchmarks and the `slotwise` CLI."""
