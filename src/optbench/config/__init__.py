"""The config layer: the typed schema Hydra composes against, the experiment presets'
registration, and what makes two runs "the same run" and two configs "the same protocol"
(the fingerprint). It imports only errors; every layer above may import it."""
