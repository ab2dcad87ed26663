"""MQTT 3.1.1 for trio-fwagent: sans-IO codec and session, Trio client and transports.

Owns everything between a byte stream and application messages. ``errors`` holds the
exception types, ``packets`` the pure wire codec, ``session`` the pure client state
machine (acks, packet ids, outbox); the Trio client and transports move bytes only.
Nothing here knows about thin-edge topics or firmware operations.

Public names are re-exported explicitly, one import line each, so adding a module's
names means adding lines, not rewriting any. The packet dataclasses and ``encode`` /
``decode`` stay in :mod:`trio_fwagent.mqtt.packets` (only the Trio client needs them).
"""

from trio_fwagent.mqtt.client import Message as Message
from trio_fwagent.mqtt.client import MqttClient as MqttClient
from trio_fwagent.mqtt.client import MqttSettings as MqttSettings
from trio_fwagent.mqtt.errors import ConnectionLost as ConnectionLost
from trio_fwagent.mqtt.errors import ConnectionRefused as ConnectionRefused
from trio_fwagent.mqtt.errors import MqttError as MqttError
from trio_fwagent.mqtt.errors import MqttUsageError as MqttUsageError
from trio_fwagent.mqtt.errors import NeedMoreData as NeedMoreData
from trio_fwagent.mqtt.errors import PacketTooLarge as PacketTooLarge
from trio_fwagent.mqtt.errors import ProtocolError as ProtocolError
from trio_fwagent.mqtt.packets import DEFAULT_MAX_PACKET_SIZE as DEFAULT_MAX_PACKET_SIZE
from trio_fwagent.mqtt.packets import Will as Will
from trio_fwagent.mqtt.packets import check_topic_filter as check_topic_filter
from trio_fwagent.mqtt.packets import check_topic_name as check_topic_name
from trio_fwagent.mqtt.packets import topic_matches as topic_matches
from trio_fwagent.mqtt.session import ClientSession as ClientSession
from trio_fwagent.mqtt.session import Connected as Connected
from trio_fwagent.mqtt.session import Event as Event
from trio_fwagent.mqtt.session import MessageDropped as MessageDropped
from trio_fwagent.mqtt.session import MessageReceived as MessageReceived
from trio_fwagent.mqtt.session import PongReceived as PongReceived
from trio_fwagent.mqtt.session import PublishAcknowledged as PublishAcknowledged
from trio_fwagent.mqtt.session import SubscribeAcknowledged as SubscribeAcknowledged
from trio_fwagent.mqtt.session import UnsubscribeAcknowledged as UnsubscribeAcknowledged
