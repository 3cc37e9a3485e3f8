"""Trajectory-video workload: multi-view videos of 3D trajectories, four video extractors.

Generation (``generate``) writes a sharded, deterministic dataset; training (``train``)
fits a multi-task model (trajectory class + next 3D position) with one extractor.
"""
