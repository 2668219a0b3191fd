{
 "format": "commandv-pack-signature",
 "version": 1,
 "algorithm": "ed25519",
 "key_id": "330da1fffec5ced9",
 "sha256": "5b8496e9f56f1e24b0962540cde28df9376df3b9744f13e377bf24a9868d4e16",
 "size": 2016,
 "signature": "jwGaucRQdCgARwgrH04GkJVBngGAAgOgDWD+TgqTRhi0CzskZYDqDO7bqWm3G7h8RPoZTJIAuw6cUNWDEHkZDA=="
}
