"""The wire contract (docs/PROTOCOL.md), pure: COSE/CBOR, Merkle trees, the typed messages,
their verification, reason codes and topic names. No sockets, threads, files or clock in
here, and nothing imported from the rest of the project: everything else imports this."""
