from enum import StrEnum


class Queue(StrEnum):
    PROVISIONING = "provisioning"
