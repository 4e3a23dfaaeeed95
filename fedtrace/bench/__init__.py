"""How fast fedtrace is on this machine: ``scripts/bench`` (``python -m fedtrace.bench``).

Measurement code lives here, apart from the protocol modules it measures:
``groups`` (the ristretto255 ceiling), ``micro`` (blinding, filters, the
openmined-psi peer, message sizes), ``identifiers``, ``aggregate`` and
``overlap`` (one query in one process), ``federation`` and
``overlap_federation`` (real `fedtrace node serve` processes through
``fedtrace.harness``), ``run`` (one whole run) and ``figures`` (what a run
collects and the table it prints).
"""
