// Package darwincheck type-checks Go packages for darwin from any host
// (DESIGN.md §8). The vz backend needs cgo and the macOS SDK, so it cannot
// be compiled off a Mac; type-checking it catches what compiling would catch
// in our own code: a wrong vz method name or signature, a missing import.
//
// It lists the packages with `go list -e -deps -json` under GOOS=darwin and
// CGO_ENABLED=1 (which selects the cgo files without running cgo), then
// checks each with go/types in dependency order, importing the packages it
// already checked. FakeImportC stands in for cgo's "C" package. Dependencies
// are checked without function bodies: only their declarations matter to
// us, and their bodies are where cgo and assembly details live.
package darwincheck

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"go/types"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Options say what to check.
type Options struct {
	// Dir is where go list runs (in the module); "" is the current one.
	Dir string
	// GOARCH is the darwin architecture: arm64 or amd64.
	GOARCH string
	// Patterns are go list package patterns, like ./... .
	Patterns []string
	// Exclude are go list patterns of packages not to check even when
	// Patterns match them: the guest's packages, which are Linux-only by
	// design. A checked package that imports one fails at that import.
	Exclude []string
	// Go is the go command; "" is "go" from PATH.
	Go string
}

// Result is what a check found.
type Result struct {
	// Errors are the type errors in our module's packages (and go list's
	// errors for them): each is "file:line:col: message".
	Errors []string
	// DepErrors are the errors in dependencies, which are not ours to
	// fix; see Check.
	DepErrors []string
	// Checked is how many packages were type-checked.
	Checked int
}

// listedPackage is what we read of go list's JSON.
type listedPackage struct {
	ImportPath string
	Dir        string
	Name       string
	GoFiles    []string
	CgoFiles   []string
	ImportMap  map[string]string
	Standard   bool
	DepOnly    bool
	Module     *struct {
		Path      string
		Main      bool
		GoVersion string
	}
	Error *struct {
		Pos string
		Err string
	}
}

// ours is whether p belongs to the main module: fully checked, and its
// errors count.
func (p *listedPackage) ours() bool { return p.Module != nil && p.Module.Main }

// Check type-checks o.Patterns and their dependencies for darwin/o.GOARCH.
//
// Errors inside dependencies are kept apart, not reported: with bodies skipped
// and FakeImportC they have had none so far, but a dependency's cgo
// declarations can use C types in ways FakeImportC cannot follow (a C
// constant in a const declaration, say), and such an error says nothing
// about our code. When a dependency's declaration fails to type, its uses
// in our code are invalid operands, which go/types does not report again;
// DepErrors in the result keep that visible.
func Check(ctx context.Context, o Options) (*Result, error) {
	if o.GOARCH == "" {
		return nil, errors.New("darwincheck: GOARCH not set")
	}
	sizes := types.SizesFor("gc", o.GOARCH)
	if sizes == nil {
		return nil, fmt.Errorf("darwincheck: unknown GOARCH %q", o.GOARCH)
	}
	pkgs, err := list(ctx, o, o.Patterns)
	if err != nil {
		return nil, err
	}
	excluded := make(map[string]bool)
	if len(o.Exclude) > 0 {
		ex, err := list(ctx, o, o.Exclude)
		if err != nil {
			return nil, err
		}
		for _, p := range ex {
			if !p.DepOnly {
				excluded[p.ImportPath] = true
			}
		}
	}
	res := &Result{}
	fset := token.NewFileSet()
	checked := make(map[string]*types.Package, len(pkgs))

	// go list -deps prints every package after its dependencies.
	for _, p := range pkgs {
		if excluded[p.ImportPath] {
			continue
		}
		if p.Error != nil {
			if strings.Contains(p.Error.Err, "build constraints exclude all Go files") && !p.DepOnly {
				// A package of ours that is not for darwin (the
				// guest's, say); importing it would fail below.
				continue
			}
			msg := p.Error.Err
			if p.Error.Pos != "" {
				msg = p.Error.Pos + ": " + msg
			}
			if p.ours() {
				res.Errors = append(res.Errors, rel(o.Dir, msg))
			} else {
				res.DepErrors = append(res.DepErrors, msg)
			}
			continue
		}
		if p.ImportPath == "unsafe" {
			checked["unsafe"] = types.Unsafe
			continue
		}
		names := append(append([]string(nil), p.GoFiles...), p.CgoFiles...)
		if len(names) == 0 {
			continue
		}
		files, perr := parse(fset, p.Dir, names)
		var errs []string
		for _, e := range perr {
			errs = append(errs, e.Error())
		}
		conf := types.Config{
			Importer:         importer{pkg: p, checked: checked},
			FakeImportC:      true,
			IgnoreFuncBodies: !p.ours(),
			Sizes:            sizes,
			Error:            func(err error) { errs = append(errs, err.Error()) },
		}
		if p.Module != nil && p.Module.GoVersion != "" {
			conf.GoVersion = "go" + p.Module.GoVersion
		}
		tp, _ := conf.Check(p.ImportPath, fset, files, nil)
		checked[p.ImportPath] = tp
		res.Checked++
		if p.ours() {
			for _, e := range errs {
				res.Errors = append(res.Errors, rel(o.Dir, e))
			}
		} else {
			res.DepErrors = append(res.DepErrors, errs...)
		}
	}
	return res, nil
}

// list runs go list for darwin and decodes its package stream.
func list(ctx context.Context, o Options, patterns []string) ([]*listedPackage, error) {
	goCmd := o.Go
	if goCmd == "" {
		goCmd = "go"
	}
	args := append([]string{"list", "-e", "-deps", "-json=ImportPath,Dir,Name,GoFiles,CgoFiles,ImportMap,Standard,DepOnly,Module,Error", "--"}, patterns...)
	cmd := exec.CommandContext(ctx, goCmd, args...)
	cmd.Dir = o.Dir
	cmd.Env = append(os.Environ(), "GOOS=darwin", "GOARCH="+o.GOARCH, "CGO_ENABLED=1")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("darwincheck: go list: %w: %s", err, strings.TrimSpace(stderr.String()))
	}
	var pkgs []*listedPackage
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		p := new(listedPackage)
		if err := dec.Decode(p); err == io.EOF {
			break
		} else if err != nil {
			return nil, fmt.Errorf("darwincheck: go list output: %w", err)
		}
		pkgs = append(pkgs, p)
	}
	return pkgs, nil
}

func parse(fset *token.FileSet, dir string, names []string) ([]*ast.File, []error) {
	var (
		files []*ast.File
		errs  []error
	)
	for _, name := range names {
		f, err := parser.ParseFile(fset, filepath.Join(dir, name), nil, parser.SkipObjectResolution)
		if err != nil {
			errs = append(errs, err)
		}
		if f != nil {
			files = append(files, f)
		}
	}
	return files, errs
}

// importer resolves the imports of pkg to packages already checked.
type importer struct {
	pkg     *listedPackage
	checked map[string]*types.Package
}

func (i importer) Import(path string) (*types.Package, error) {
	if path == "unsafe" {
		return types.Unsafe, nil
	}
	// ImportMap holds vendoring: std imports golang.org/x/... from
	// vendor/golang.org/x/....
	if actual, ok := i.pkg.ImportMap[path]; ok {
		path = actual
	}
	if p := i.checked[path]; p != nil {
		return p, nil
	}
	// Excluded, without Go files for darwin, or failed in go list (-v
	// shows the dependencies' errors).
	return nil, fmt.Errorf("package %s is not available for darwin", path)
}

// rel shortens the absolute file names in msg to names relative to dir.
func rel(dir, msg string) string {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return msg
	}
	return strings.ReplaceAll(msg, abs+string(filepath.Separator), "")
}
