// Package modgroups is how the guest image names kernel modules that the
// agent loads only when asked: a file next to modules.dep that the image
// builder writes and the agent reads. Every other module of the image is
// loaded at boot; a group's modules, and the dependencies only they need,
// are loaded when the kernel command line names the group (CmdlineKey), so
// that a VM pays the boot time of a driver only when it uses it.
package modgroups

import (
	"bufio"
	"fmt"
	"io"
	"slices"
	"strings"
)

// File is the file's name in /lib/modules/<release>.
const File = "modules.optional"

// CmdlineKey is the kernel command line parameter that names the groups to
// load, comma-separated: vz.modules=usb,bridge.
const CmdlineKey = "vz.modules"

// Write writes groups, one a line: "name: module module…", sorted.
func Write(w io.Writer, groups map[string][]string) error {
	names := make([]string, 0, len(groups))
	for g := range groups {
		names = append(names, g)
	}
	slices.Sort(names)
	for _, g := range names {
		if err := checkName(g); err != nil {
			return err
		}
		if _, err := fmt.Fprintf(w, "%s: %s\n", g, strings.Join(groups[g], " ")); err != nil {
			return err
		}
	}
	return nil
}

// Parse reads what Write wrote.
func Parse(r io.Reader) (map[string][]string, error) {
	groups := map[string][]string{}
	s := bufio.NewScanner(r)
	for line := 1; s.Scan(); line++ {
		text := strings.TrimSpace(s.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		g, mods, ok := strings.Cut(text, ":")
		g = strings.TrimSpace(g)
		if !ok || checkName(g) != nil || len(strings.Fields(mods)) == 0 {
			return nil, fmt.Errorf("%s line %d: want \"group: module…\", got %q", File, line, text)
		}
		if _, dup := groups[g]; dup {
			return nil, fmt.Errorf("%s line %d: group %s listed twice", File, line, g)
		}
		groups[g] = strings.Fields(mods)
	}
	return groups, s.Err()
}

// Cmdline is the command line parameter that asks for groups.
func Cmdline(groups []string) string {
	return CmdlineKey + "=" + strings.Join(groups, ",")
}

func checkName(g string) error {
	if g == "" || strings.ContainsAny(g, ":, \t\n") {
		return fmt.Errorf("module group %q: want a word without commas or colons", g)
	}
	return nil
}
