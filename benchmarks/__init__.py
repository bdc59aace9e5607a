"""Load and size benchmarks; each prints ratios against an anchor measured in
the same run (see ../../shared/DESIGN.md), never a timed assertion."""
