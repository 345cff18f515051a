"""
The component schemas of the OpenAPI document (L{streamd.web.openapi}): the JSON
bodies the API takes and answers, by name.
"""

from __future__ import annotations

from typing import Any

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,199}$"

SCHEMAS: dict[str, Any] = {
    "Error": {"type": "object", "required": ["error"], "properties": {"error": {
        "type": "object", "required": ["status", "message"],
        "properties": {"status": {"type": "integer"}, "message": {"type": "string"}}}}},
    "Info": {"type": "object", "required": ["service", "version", "uptime", "open_streams",
                                            "sources"],
             "properties": {
                 "service": {"const": "streamd"},
                 "version": {"type": "string"},
                 "uptime": {"type": "number"},
                 "open_streams": {"type": "integer"},
                 "sources": {"type": "object", "additionalProperties": {
                     "type": "object", "properties": {
                         "source": {"type": "string"},
                         "status": {"enum": ["ok", "down"]},
                         "reason": {"type": ["string", "null"]},
                         "declared": {"type": "boolean", "description": "In the config "
                                      "(not a memory stream made on first use)."},
                         "readers": {"type": "integer", "description": "Open streams."},
                         "paused_readers": {"type": "integer", "description": "Readers "
                                            "whose source subscription is paused."},
                         "published": {"type": "integer", "description": "Messages "
                                       "published through this server."},
                         "delivered": {"type": "integer", "description": "Messages "
                                       "written to readers."},
                         "published_per_second": {"type": "number"},
                         "delivered_per_second": {"type": "number"}}}},
                 "source_kinds": {"type": "object", "description": "The installed source "
                                  "kinds (what `source =` may name) and the package "
                                  "that provides each.",
                                  "additionalProperties": {"type": "string"}},
                 "identities": {"type": "object", "description": "Admins only: open "
                                "streams per identity.",
                                "additionalProperties": {"type": "integer"}},
             }},
    "Health": {"type": "object", "required": ["service", "status"],
               "description": "With auth on, only these two fields, unless the caller may "
                              "see GET / (then every field of Info too).",
               "properties": {"service": {"const": "streamd"},
                              "status": {"enum": ["ok", "down"]}}},
    "Message": {"type": "object", "required": ["id", "stream", "data"], "properties": {
        "id": {"type": "string"}, "stream": {"type": "string"},
        "data": {"description": "The published JSON value."},
        "attributes": {"type": "object"}}},
    "Event": {"type": "object", "required": ["id", "ts", "data"], "properties": {
        "id": {"type": "string"}, "ts": {"type": "number"},
        "data": {"type": "object", "description": "The stored JSON object."}}},
    "Published": {"type": "object", "required": ["ids"], "properties": {
        "ids": {"type": "array", "items": {"type": "string"}}}},
    "AckRequest": {"type": "object", "required": ["session", "ids"], "properties": {
        "session": {"type": "string", "description": "The Streamd-Session header's value."},
        "ids": {"type": "array", "items": {"type": "string"}}}},
    "AckResult": {"type": "object", "required": ["acked", "unknown"], "properties": {
        "acked": {"type": "integer"}, "unknown": {"type": "integer"}}},
    "ChannelValue": {"type": "object", "required": ["channel", "value"], "properties": {
        "channel": {"type": "string"}, "value": {}}},
    "Subscription": {"type": "object", "required": ["id", "channels", "stream"],
                     "properties": {"id": {"type": "string"},
                                    "channels": {"type": "array",
                                                 "items": {"type": "string"}},
                                    "stream": {"type": "string"}}},
    "SubscriptionPatch": {"oneOf": [
        {"type": "object", "required": ["channels"], "additionalProperties": False,
         "properties": {"channels": {"type": "array", "items": {"type": "string",
                                                                "pattern": NAME_PATTERN}}}},
        {"type": "object", "additionalProperties": False, "properties": {
            "add": {"type": "array", "items": {"type": "string", "pattern": NAME_PATTERN}},
            "remove": {"type": "array",
                       "items": {"type": "string", "pattern": NAME_PATTERN}}}},
    ]},
}
