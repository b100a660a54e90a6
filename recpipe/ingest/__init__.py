"""recpipe.ingest: raw click logs → validated, day-partitioned Parquet (the only place apache_beam is imported).

Modules: ``options`` (IngestOptions, reserved ids), ``sources`` (inputs, days, byte-range work units),
``parse`` / ``transform`` (per-batch Arrow functions shared by both engines), ``hashing``, ``vocab``, ``stats``,
``writer``, ``dataset`` (root layout, atomic publish), ``engine_arrow`` (single-process engine), ``pipeline``
(the Beam pipeline) and ``driver`` (:func:`recpipe.ingest.driver.ingest`, the entry point of both engines).
See README.md in this folder for runners and the dataset layout. Nothing is imported here, so importing a
single module (e.g. ``recpipe.ingest.hashing``) stays cheap.
"""
