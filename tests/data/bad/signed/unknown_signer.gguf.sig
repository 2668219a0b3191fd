{
 "format": "commandv-pack-signature",
 "version": 1,
 "algorithm": "ed25519",
 "key_id": "fa528be01fe2acac",
 "sha256": "5b8496e9f56f1e24b0962540cde28df9376df3b9744f13e377bf24a9868d4e16",
 "size": 2016,
 "signature": "RUghqsdphsrYIkuBdyA50RS2pZR9IPnf3IKtARoLcfmRsdbcoeI+zC/OvFo99jSVYy/kVz9B3yrrTIkOdZpmAw=="
}
