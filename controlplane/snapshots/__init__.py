"""Snapshots: translated resources, serialized once and shared by every sidecar that uses them.

`resources` holds the serialized resource and the translation cache (keyed by the inputs each
resource depends on); `sets` the versioned sets of resources a group of sidecars share, with a log
of what changed; `views` which resources a scope (namespace, Sidecar, on-demand names) gets;
`wire` the protobuf encoding of responses from pre-serialized pieces.
"""
