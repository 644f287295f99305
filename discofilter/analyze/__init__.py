"""``discofilter analyze``: what filtering would save on a cluster, measured before anything is deployed.

It lists and watches what istiod lists and watches (namespaces; pods, services, endpoints and
endpointslices cluster-wide, asking for protobuf as istiod does), and counts per namespace what arrives:
events by kind and type, bytes as received, the objects and bytes of the first LIST. It reads only.

- ``accounting``: sans-I/O. Bytes in (watch bodies chunk by chunk, LIST bodies whole), counts out.
- ``report``: sans-I/O. The counts and mesh membership in, the report (totals, top namespaces, the CPU
  estimate, server-side exclusion at its bound, warnings) and its text rendering out.
- ``shell``: the asyncio shell: one LIST then one WATCH per kind, 410 -> relist (counted), progress,
  Ctrl-C.
- ``cli``: flags onto ``AnalyzeSettings``, and the files written.
"""
