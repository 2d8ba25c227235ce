'''dbusmock template = stock "bluez5" template + AddBleDevice with correct D-Bus types.

Load with:  /usr/bin/python3 -m dbusmock --system --template /path/to/bluez5_ble.py
The stock AddDevice publishes ManufacturerData as aa{qv}, ServiceData as aa{sv},
AdvertisingFlags as aay and AdvertisingData as aa{yv} (all one array level too deep).
AddBleDevice publishes correct types in a single InterfacesAdded signal.
'''
import dbus
from dbusmock import OBJECT_MANAGER_IFACE, mockobject
from dbusmock.templates.bluez5 import *  # noqa: F401,F403  (BUS_NAME, load, AddAdapter, ...)
from dbusmock.templates import bluez5 as _b


@dbus.service.method(_b.BLUEZ_MOCK_IFACE, in_signature='sssnasa{qay}', out_signature='s')
def AddBleDevice(self, adapter_device_name, address, name, rssi, uuids, manufacturer_data):
    '''AddBleDevice('hci0', 'C4:7C:8D:6A:12:34', 'OMH-BR-0042', -60,
                    ['0000180f-0000-1000-8000-00805f9b34fb'], {0x0059: b'\x01\x02'}) -> object path'''
    adapter_path = '/org/bluez/' + adapter_device_name
    path = adapter_path + '/dev_' + address.replace(':', '_').upper()
    if adapter_path not in mockobject.objects:
        raise dbus.exceptions.DBusException(f'Adapter {adapter_device_name} does not exist.',
                                            name=_b.BLUEZ_MOCK_IFACE + '.NoSuchAdapter')
    props = {
        'Address': dbus.String(address, variant_level=1),
        'AddressType': dbus.String('public', variant_level=1),
        'Name': dbus.String(name, variant_level=1),
        'Alias': dbus.String(name, variant_level=1),
        'Icon': dbus.String('', variant_level=1),
        'Class': dbus.UInt32(0, variant_level=1),
        'Appearance': dbus.UInt16(0, variant_level=1),
        'UUIDs': dbus.Array([dbus.String(u) for u in uuids], signature='s', variant_level=1),
        'Paired': dbus.Boolean(False, variant_level=1),
        'Bonded': dbus.Boolean(False, variant_level=1),
        'Connected': dbus.Boolean(False, variant_level=1),
        'Trusted': dbus.Boolean(False, variant_level=1),
        'Blocked': dbus.Boolean(False, variant_level=1),
        'WakeAllowed': dbus.Boolean(False, variant_level=1),
        'Adapter': dbus.ObjectPath(adapter_path, variant_level=1),
        'LegacyPairing': dbus.Boolean(False, variant_level=1),
        'Modalias': dbus.String('', variant_level=1),
        'RSSI': dbus.Int16(rssi, variant_level=1),
        'TxPower': dbus.Int16(0, variant_level=1),
        'ManufacturerData': dbus.Dictionary(
            {dbus.UInt16(k): dbus.Array(bytes(v), signature='y', variant_level=1)
             for k, v in manufacturer_data.items()}, signature='qv', variant_level=1),
        'ServiceData': dbus.Dictionary({}, signature='sv', variant_level=1),
        'ServicesResolved': dbus.Boolean(False, variant_level=1),
        'AdvertisingFlags': dbus.Array([dbus.Byte(6)], signature='y', variant_level=1),
        'AdvertisingData': dbus.Dictionary({}, signature='yv', variant_level=1),
    }
    self.AddObject(path, _b.DEVICE_IFACE, props, [
        ('CancelPairing', '', '', ''),
        ('Connect', '', '', _b.Connect),
        ('ConnectProfile', 's', '', ''),
        ('Disconnect', '', '', _b.Disconnect),
        ('DisconnectProfile', 's', '', ''),
        ('Pair', '', '', _b.Pair),
    ])
    dev = mockobject.objects[path]
    dev.paired = False
    dev.connected = False
    mockobject.objects['/'].EmitSignal(OBJECT_MANAGER_IFACE, 'InterfacesAdded', 'oa{sa{sv}}',
                                       [dbus.ObjectPath(path), {_b.DEVICE_IFACE: props}])
    return path
