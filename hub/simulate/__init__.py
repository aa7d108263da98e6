"""A simulated City of Prato fleet: pure, deterministic generators of field-device messages.

``hub.simulate.fleet`` builds parking bays, Citelum lamp controllers and cabinets and traffic
counters from a ``FleetSpec`` and produces the MQTT messages they would publish, shaped exactly
as in ``field-devices.md``. Nothing here opens a connection or starts a thread: publishing the
messages is the caller's business.
"""
