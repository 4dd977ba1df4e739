"""Config sources: where Istio resources come from (a watched directory; later the Kubernetes API).

A source delivers complete `LoadResult`s (every resource, or every error) to one
callback; a Kubernetes source (CRD, Service and EndpointSlice watches) would
deliver the same to the same callback, so nothing downstream changes.
"""
