{
 "format": "commandv-pack-signature",
 "version": 1,
 "algorithm": "ed25519",
 "key_id": "330da1fffec5ced9",
 "sha256": "313acbd7787d4b2cc169c736c8f7619b6a2df56c3f7d0cb1d7b26e779c8d3067",
 "size": 2016,
 "signature": "jgGaucRQdCgARwgrH04GkJVBngGAAgOgDWD+TgqTRhi0CzskZYDqDO7bqWm3G7h8RPoZTJIAuw6cUNWDEHkZDA=="
}
