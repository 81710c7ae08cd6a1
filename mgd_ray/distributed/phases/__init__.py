"""The study's phases, in the order study.run_study runs them for each protocol: teachers
(trained or found cached), teacher targets (computed once into a store), then the Tune runs
(search, ablation). Each phase starts only the Ray work it owns."""
