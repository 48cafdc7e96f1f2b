#!/usr/bin/env python3
"""A stand-in kubelet device plugin (API v1beta1) for the e2e smoke test.

It advertises N healthy fake devices as an extended resource, answers Allocate with
an environment variable naming the devices, and registers with the kubelet again
whenever the kubelet restarts (which deletes plugin sockets).

Only grpcio is needed: the few protobuf messages of the API are encoded by hand
(field numbers from k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1/api.proto).

Run it inside a node, e.g.:
  e2e/node-exec worker1 $K8SLAN_CACHE/venv/bin/python e2e/deviceplugin/fake_device_plugin.py \
      --resource e2e.k8slan.io/fake --devices 2
"""
import argparse
import logging
import os
import signal
import threading
import time
from concurrent import futures

import grpc

API_VERSION = "v1beta1"
KUBELET_SOCKET = "/var/lib/kubelet/device-plugins/kubelet.sock"  # fixed by the kubelet

# --- minimal protobuf wire format ---------------------------------------------


def _varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def pb_bytes(field, data):
    """Length-delimited field (strings, bytes, embedded messages)."""
    if isinstance(data, str):
        data = data.encode()
    return _varint(field << 3 | 2) + _varint(len(data)) + data


def pb_bool(field, value):
    return _varint(field << 3 | 0) + _varint(1) if value else b""


def pb_decode(buf):
    """Decode one message level into {field: [values]} (bytes for length-delimited)."""
    fields, i = {}, 0
    while i < len(buf):
        key, i = _read_varint(buf, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _read_varint(buf, i)
        elif wire == 2:
            length, i = _read_varint(buf, i)
            value, i = buf[i:i + length], i + length
        elif wire == 1:
            value, i = buf[i:i + 8], i + 8
        elif wire == 5:
            value, i = buf[i:i + 4], i + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        fields.setdefault(field, []).append(value)
    return fields


def _read_varint(buf, i):
    shift = result = 0
    while True:
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7


identity = lambda b: b  # noqa: E731  messages travel as already-encoded bytes

# --- the plugin ---------------------------------------------------------------


class FakeDevicePlugin:
    def __init__(self, resource, count, plugin_dir, socket_name):
        self.resource = resource
        self.devices = [f"fake-{i}" for i in range(count)]
        self.plugin_dir = plugin_dir
        self.socket = os.path.join(plugin_dir, socket_name)
        self.stop = threading.Event()
        self.server = None

    # DevicePlugin service ------------------------------------------------------
    def get_options(self, request, context):
        return b""  # DevicePluginOptions{}: no PreStart, no preferred allocation

    def list_and_watch(self, request, context):
        devices = b"".join(pb_bytes(1, pb_bytes(1, d) + pb_bytes(2, "Healthy")) for d in self.devices)
        yield devices  # ListAndWatchResponse{devices}
        # Nothing ever changes: keep the stream open until the plugin or kubelet goes away.
        while not self.stop.is_set() and context.is_active():
            self.stop.wait(5)

    def allocate(self, request, context):
        responses = b""
        for creq in pb_decode(request).get(1, []):  # ContainerAllocateRequest
            ids = [i.decode() for i in pb_decode(creq).get(1, [])]
            logging.info("allocate %s", ids)
            env = pb_bytes(1, "FAKE_DEVICE_IDS") + pb_bytes(2, ",".join(ids))
            responses += pb_bytes(1, pb_bytes(1, env))  # ContainerAllocateResponse{envs}
        return responses

    def get_preferred_allocation(self, request, context):
        return b""

    def pre_start_container(self, request, context):
        return b""

    def serve(self):
        if os.path.exists(self.socket):
            os.unlink(self.socket)
        unary = lambda fn: grpc.unary_unary_rpc_method_handler(fn, identity, identity)  # noqa: E731
        handler = grpc.method_handlers_generic_handler(f"{API_VERSION}.DevicePlugin", {
            "GetDevicePluginOptions": unary(self.get_options),
            "ListAndWatch": grpc.unary_stream_rpc_method_handler(self.list_and_watch, identity, identity),
            "Allocate": unary(self.allocate),
            "GetPreferredAllocation": unary(self.get_preferred_allocation),
            "PreStartContainer": unary(self.pre_start_container),
        })
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        self.server.add_generic_rpc_handlers((handler,))
        self.server.add_insecure_port(f"unix://{self.socket}")
        self.server.start()

    def register(self):
        with grpc.insecure_channel(f"unix://{KUBELET_SOCKET}") as channel:
            register = channel.unary_unary(f"/{API_VERSION}.Registration/Register",
                                           request_serializer=identity, response_deserializer=identity)
            request = (pb_bytes(1, API_VERSION) + pb_bytes(2, os.path.basename(self.socket))
                       + pb_bytes(3, self.resource))
            register(request, timeout=10)
        logging.info("registered %s (%d devices) at %s", self.resource, len(self.devices), self.socket)

    def run(self):
        """Serve and register; start over when the kubelet removes our socket."""
        while not self.stop.is_set():
            try:
                self.serve()
                self.register()
            except grpc.RpcError as err:
                logging.warning("registration failed (%s), retrying", err.code())
                self.server.stop(0)
                self.stop.wait(2)
                continue
            while not self.stop.is_set() and os.path.exists(self.socket):
                self.stop.wait(1)
            self.server.stop(1)
            if not self.stop.is_set():
                logging.info("socket removed (kubelet restarted?): registering again")
        if os.path.exists(self.socket):
            os.unlink(self.socket)


def main():
    p = argparse.ArgumentParser(description="fake kubelet device plugin")
    p.add_argument("--resource", default="e2e.k8slan.io/fake")
    p.add_argument("--devices", type=int, default=2)
    p.add_argument("--plugin-dir", default=os.path.dirname(KUBELET_SOCKET))
    p.add_argument("--socket-name", default="e2e-fake.sock")
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s fake-device-plugin %(message)s")
    plugin = FakeDevicePlugin(a.resource, a.devices, a.plugin_dir, a.socket_name)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: plugin.stop.set())
    plugin.run()


if __name__ == "__main__":
    main()
