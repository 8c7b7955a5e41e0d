"""AclError and CANN's numeric error codes, shared by every layer.

The codes are AscendCL's (``aclError`` in ``acl_base.h``) so that programs written against CANN can
test the same numbers. ``docs/errors.md`` lists them with what raises each.
"""
from __future__ import annotations

from enum import IntEnum


class ErrorCode(IntEnum):
    SUCCESS = 0
    INVALID_PARAM = 100000
    UNINITIALIZE = 100001
    REPEAT_INITIALIZE = 100002
    INVALID_FILE = 100003
    WRITE_FILE = 100004
    INVALID_FILE_SIZE = 100005
    PARSE_FILE = 100006
    FILE_MISSING_ATTR = 100007
    FILE_ATTR_INVALID = 100008
    INVALID_PROFILING_CONFIG = 100010
    INVALID_MODEL_ID = 100011
    DESERIALIZE_MODEL = 100012
    PARSE_MODEL = 100013
    READ_MODEL_FAILURE = 100014
    MODEL_SIZE_INVALID = 100015
    MODEL_MISSING_ATTR = 100016
    MODEL_INPUT_NOT_MATCH = 100017
    MODEL_OUTPUT_NOT_MATCH = 100018
    MODEL_NOT_DYNAMIC = 100019
    OP_TYPE_NOT_MATCH = 100020
    OP_INPUT_NOT_MATCH = 100021
    OP_OUTPUT_NOT_MATCH = 100022
    OP_ATTR_NOT_MATCH = 100023
    OP_NOT_FOUND = 100024
    OP_LOAD_FAILED = 100025
    UNSUPPORTED_DATA_TYPE = 100026
    FORMAT_NOT_MATCH = 100027
    REPEAT_FINALIZE = 100037
    BAD_ALLOC = 200000
    API_NOT_SUPPORT = 200001
    INVALID_DEVICE = 200002
    MEMORY_ADDRESS_UNALIGNED = 200003
    RESOURCE_NOT_MATCH = 200004
    INVALID_RESOURCE_HANDLE = 200005
    FEATURE_UNSUPPORTED = 200006
    STORAGE_OVER_LIMIT = 300000
    INTERNAL_ERROR = 500000
    FAILURE = 500001
    PROFILING_FAILURE = 500005


class AclError(Exception):
    """An error with CANN's numeric code; ``str()`` reads ``[code NAME] message``."""

    def __init__(self, code: ErrorCode | int, message: str):
        self.code = int(code)
        self.message = message
        try:
            label = ErrorCode(self.code).name
        except ValueError:
            label = "ERROR"
        super().__init__(f"[{self.code} {label}] {message}")
