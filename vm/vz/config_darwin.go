//go:build darwin && cgo

package vz

import (
	"errors"
	"fmt"
	"runtime"

	"github.com/Code-Hex/vz/v3"
	"github.com/containerd/errdefs"
)

// thisHost reads VZ's limits.
func thisHost() Host {
	return Host{
		Arch:      runtime.GOARCH,
		MinCPUs:   vz.VirtualMachineConfigurationMinimumAllowedCPUCount(),
		MaxCPUs:   vz.VirtualMachineConfigurationMaximumAllowedCPUCount(),
		MinMemory: vz.VirtualMachineConfigurationMinimumAllowedMemorySize(),
		MaxMemory: vz.VirtualMachineConfigurationMaximumAllowedMemorySize(),
		USB:       usbAvailable(),
	}
}

// usbAvailable: vz refuses an XHCI controller before macOS 15.
func usbAvailable() bool {
	_, err := vz.NewXHCIControllerConfiguration()
	return err == nil
}

// configure executes p: the VZ configuration it describes, validated.
// machineID, when set, is the platform's identity (a template's: a saved
// VM restores only into a VM of the same identity).
func configure(p Plan, machineID *vz.GenericMachineIdentifier) (*vz.VirtualMachineConfiguration, error) {
	opts := []vz.LinuxBootLoaderOption{vz.WithCommandLine(p.CommandLine)}
	if p.Initrd != "" {
		opts = append(opts, vz.WithInitrd(p.Initrd))
	}
	boot, err := vz.NewLinuxBootLoader(p.Kernel, opts...)
	if err != nil {
		return nil, fmt.Errorf("vz: boot loader: %w", err)
	}
	c, err := vz.NewVirtualMachineConfiguration(boot, p.CPUs, p.MemoryBytes)
	if err != nil {
		return nil, fmt.Errorf("vz: configuration: %w", err)
	}

	disks := make([]vz.StorageDeviceConfiguration, 0, len(p.Disks))
	for _, d := range p.Disks {
		att, err := vz.NewDiskImageStorageDeviceAttachmentWithCacheAndSync(d.Path, d.ReadOnly, cachingMode(d.Caching), syncMode(d.Sync))
		if err != nil {
			return nil, fmt.Errorf("vz: disk %s (%s): %w", d.ID, d.Path, err)
		}
		blk, err := vz.NewVirtioBlockDeviceConfiguration(att)
		if err != nil {
			return nil, fmt.Errorf("vz: disk %s: %w", d.ID, err)
		}
		if err := blk.SetBlockDeviceIdentifier(d.ID); err != nil {
			return nil, fmt.Errorf("vz: disk %s: identifier: %w", d.ID, err)
		}
		disks = append(disks, blk)
	}
	c.SetStorageDevicesVirtualMachineConfiguration(disks)

	if machineID != nil {
		platform, err := vz.NewGenericPlatformConfiguration(vz.WithGenericMachineIdentifier(machineID))
		if err != nil {
			return nil, fmt.Errorf("vz: platform: %w", err)
		}
		c.SetPlatformVirtualMachineConfiguration(platform)
	}

	if p.SharesDevice() {
		dirs := make(map[string]*vz.SharedDirectory, len(p.Shares))
		for _, s := range p.Shares {
			dir, err := vz.NewSharedDirectory(s.Path, s.ReadOnly)
			if err != nil {
				return nil, fmt.Errorf("vz: share %s (%s): %w", s.Tag, s.Path, err)
			}
			dirs[s.Tag] = dir
		}
		multi, err := vz.NewMultipleDirectoryShare(dirs)
		if err != nil {
			return nil, fmt.Errorf("vz: shares: %w", err)
		}
		fs, err := vz.NewVirtioFileSystemDeviceConfiguration(SharesTag)
		if err != nil {
			return nil, fmt.Errorf("vz: shares device: %w", err)
		}
		fs.SetDirectoryShare(multi)
		c.SetDirectorySharingDevicesVirtualMachineConfiguration([]vz.DirectorySharingDeviceConfiguration{fs})
	}

	sock, err := vz.NewVirtioSocketDeviceConfiguration()
	if err != nil {
		return nil, fmt.Errorf("vz: vsock: %w", err)
	}
	c.SetSocketDevicesVirtualMachineConfiguration([]vz.SocketDeviceConfiguration{sock})

	if p.MAC != nil {
		nat, err := vz.NewNATNetworkDeviceAttachment()
		if err != nil {
			return nil, fmt.Errorf("vz: network: %w", err)
		}
		nic, err := vz.NewVirtioNetworkDeviceConfiguration(nat)
		if err != nil {
			return nil, fmt.Errorf("vz: network: %w", err)
		}
		mac, err := vz.NewMACAddress(p.MAC)
		if err != nil {
			return nil, fmt.Errorf("vz: network: MAC %s: %w", p.MAC, err)
		}
		nic.SetMACAddress(mac)
		c.SetNetworkDevicesVirtualMachineConfiguration([]*vz.VirtioNetworkDeviceConfiguration{nic})
	}

	if p.ConsoleLog != "" {
		// Appended to: a log the caller kept from an earlier boot stays.
		att, err := vz.NewFileSerialPortAttachment(p.ConsoleLog, true)
		if err != nil {
			return nil, fmt.Errorf("vz: console log %s: %w", p.ConsoleLog, err)
		}
		console, err := vz.NewVirtioConsoleDeviceSerialPortConfiguration(att)
		if err != nil {
			return nil, fmt.Errorf("vz: console: %w", err)
		}
		c.SetSerialPortsVirtualMachineConfiguration([]*vz.VirtioConsoleDeviceSerialPortConfiguration{console})
	}

	if p.Hot.Slots > 0 {
		xhci, err := vz.NewXHCIControllerConfiguration()
		if err != nil {
			return nil, fmt.Errorf("vz: USB controller for disk hot-plug: %w", err)
		}
		c.SetUSBControllersVirtualMachineConfiguration([]vz.USBControllerConfiguration{xhci})
	}

	if p.Entropy {
		rng, err := vz.NewVirtioEntropyDeviceConfiguration()
		if err != nil {
			return nil, fmt.Errorf("vz: entropy: %w", err)
		}
		c.SetEntropyDevicesVirtualMachineConfiguration([]*vz.VirtioEntropyDeviceConfiguration{rng})
	}

	// Validate also fails without the com.apple.security.virtualization
	// entitlement (make darwin signs the shim with it).
	if ok, err := c.Validate(); err != nil || !ok {
		if err == nil {
			err = errors.New("rejected")
		}
		return nil, fmt.Errorf("vz: invalid configuration (is the binary signed with hack/vz.entitlements?): %v: %w", err, errdefs.ErrInvalidArgument)
	}
	return c, nil
}

func cachingMode(m CachingMode) vz.DiskImageCachingMode {
	switch m {
	case CachingCached:
		return vz.DiskImageCachingModeCached
	case CachingUncached:
		return vz.DiskImageCachingModeUncached
	default:
		return vz.DiskImageCachingModeAutomatic
	}
}

func syncMode(m SyncMode) vz.DiskImageSynchronizationMode {
	switch m {
	case SyncFsync:
		return vz.DiskImageSynchronizationModeFsync
	case SyncNone:
		return vz.DiskImageSynchronizationModeNone
	default:
		return vz.DiskImageSynchronizationModeFull
	}
}
