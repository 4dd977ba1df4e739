"""Istio's configuration API (networking.istio.io, security.istio.io) as msgspec Structs.

YAML field names are Istio's camelCase JSON names; every Struct forbids unknown
fields, and fields Istio has but pylon pilot does not implement yet are typed
`NotImplementedField` so that setting one is an error naming it.
"""
