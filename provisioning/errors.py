class StoreError(Exception):
    """A store refused or failed a request. `transient` errors may pass on retry; others need a person."""

    transient = False

    def __init__(self, message: str, *, action: str = ""):
        super().__init__(message)
        self.action = action


class TransientStoreError(StoreError):
    transient = True


class PermanentStoreError(StoreError):
    transient = False
