"""Prefect orchestration: flows over the plain jobs, deployments built from the config,
``drkit serve`` (with an embedded Prefect server when none is configured) and ``drkit deploy``
(work pools and workers for many hosts). Only this package imports Prefect."""
