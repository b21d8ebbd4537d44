"""Arguments renamed in a layer's config: saved files with the old names still load."""


def renamed_config(config, renames, layer_name):
    """A copy of `config` with the old argument names of `renames` (old -> new) renamed.

    Example:
    ```python
    renamed_config({"bins": 3}, {"bins": "context_bins"}, "AlignCM")  # {"context_bins": 3}
    ```
    """
    config = dict(config)
    for old, new in renames.items():
        if old not in config:
            continue
        if new in config:
            raise ValueError(
                f"{layer_name}: the config has both `{old}` (the old name) and `{new}`; "
                f"give only `{new}`."
            )
        config[new] = config.pop(old)
    return config
