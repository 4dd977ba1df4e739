"""What pylon reaches inside the stdlib `ssl` module's OpenSSL (`context`: the `SSL_CTX*` of an `SSLContext`)."""
