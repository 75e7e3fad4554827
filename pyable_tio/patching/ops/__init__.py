"""One class per TorchIO transform that runs per patch (see :mod:`.base` and :mod:`.registry`)."""
