"""How fast fedtrace is on this machine: ``scripts/bench`` (``python -m fedtrace.bench``).

Measurement code lives here, apart from the protocol modules it measures:
``groups`` (the ristretto255 ceiling), ``micro`` (blinding, filters, the
openmined-psi peer, message sizes), ``identifiers``, ``aggregate`` and
``overlap`` (one query in one process), ``federation`` and
``overlap_federation`` (real `fedtrace node serve` processes through
``fedtrace.harness``), ``psi`` (the side-by-side comparison with SecretFlow's
unbalanced PSI and openmined-psi at 234k and 1M, ``--psi``) and ``peers`` (the
peer libraries, SecretFlow in its own interpreter), ``sealing`` (what sealed
openings cost), ``scale`` (a 10-million-wallet node through a Dask cluster,
``--scale``), ``groups_compare`` (the candidate groups end to end), ``run``
(one whole run) and ``figures`` (what a run collects and the table it prints).
"""
