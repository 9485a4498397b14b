// A tiny cilium/ebpf harness, the second comparator for bpforch (tests/ebpf/test_cilium.py).
//
//	cilium_load PIN_ROOT OBJ...
//
// For each OBJ, prints one line of JSON: the CollectionSpec that cilium/ebpf reads from it
// (maps, programs with their instructions, and variables derived from the BTF datasecs of
// the data-section maps), then loads it into the kernel: the whole collection first, and,
// if that fails, each program on its own with LoadAndAssign. Every program that loads is
// reported with its translated instructions (xlated, hex). Maps pinned by name go under
// PIN_ROOT/<n> (the n-th object), never under /sys/fs/bpf.
//
// Built in GOPATH mode against Debian's golang-github-cilium-ebpf-dev (0.9.1), with no
// network: GO111MODULE=off GOPATH=<tmp>:/usr/share/gocode go build cilium_load.go.
// Only cilium/ebpf's public API is used.
package main

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/rlimit"
)

type insnJSON struct {
	Op  uint8  `json:"op"`
	Dst uint8  `json:"dst"`
	Src uint8  `json:"src"`
	Off int16  `json:"off"`
	Imm int64  `json:"imm"`
	Ref string `json:"ref,omitempty"`
	Sym string `json:"sym,omitempty"`
}

type mapJSON struct {
	Type       uint32     `json:"type"`
	KeySize    uint32     `json:"key_size"`
	ValueSize  uint32     `json:"value_size"`
	MaxEntries uint32     `json:"max_entries"`
	Flags      uint32     `json:"flags"`
	Pinning    uint32     `json:"pinning"`
	Inner      *mapJSON   `json:"inner"`
	Values     [][]string `json:"values"` // [key, name] of prog array / map-of-maps contents
}

type progJSON struct {
	Type          uint32     `json:"type"`
	AttachType    uint32     `json:"attach_type"`
	AttachTo      string     `json:"attach_to"`
	Section       string     `json:"section"`
	Flags         uint32     `json:"flags"`
	License       string     `json:"license"`
	KernelVersion uint32     `json:"kernel_version"`
	Instructions  []insnJSON `json:"instructions"`
}

type varJSON struct {
	Section string `json:"section"`
	Offset  uint32 `json:"offset"`
	Size    uint32 `json:"size"`
}

type specJSON struct {
	Maps      map[string]mapJSON  `json:"maps"`
	Programs  map[string]progJSON `json:"programs"`
	Variables map[string]varJSON  `json:"variables"`
}

type loadJSON struct {
	OK     bool                `json:"ok"`
	Error  string              `json:"error,omitempty"`
	Xlated string              `json:"xlated,omitempty"`
	Maps   map[string][]uint32 `json:"maps,omitempty"` // id → type, key, value, max entries, flags
}

type resultJSON struct {
	Path      string              `json:"path"`
	SpecError string              `json:"spec_error,omitempty"`
	Spec      *specJSON           `json:"spec,omitempty"`
	Load      *loadJSON           `json:"load,omitempty"` // the whole collection
	Programs  map[string]loadJSON `json:"programs,omitempty"`
}

func describeMap(m *ebpf.MapSpec) *mapJSON {
	if m == nil {
		return nil
	}
	out := &mapJSON{
		Type:       uint32(m.Type),
		KeySize:    m.KeySize,
		ValueSize:  m.ValueSize,
		MaxEntries: m.MaxEntries,
		Flags:      m.Flags,
		Pinning:    uint32(m.Pinning),
		Inner:      describeMap(m.InnerMap),
		Values:     [][]string{},
	}
	for _, kv := range m.Contents {
		name, ok := kv.Value.(string)
		if !ok {
			continue
		}
		out.Values = append(out.Values, []string{fmt.Sprint(kv.Key), name})
	}
	return out
}

func describeProgram(p *ebpf.ProgramSpec) progJSON {
	out := progJSON{
		Type:          uint32(p.Type),
		AttachType:    uint32(p.AttachType),
		AttachTo:      p.AttachTo,
		Section:       p.SectionName,
		Flags:         p.Flags,
		License:       p.License,
		KernelVersion: p.KernelVersion,
		Instructions:  []insnJSON{},
	}
	for _, ins := range p.Instructions {
		out.Instructions = append(out.Instructions, insnJSON{
			Op:  uint8(ins.OpCode),
			Dst: uint8(ins.Dst),
			Src: uint8(ins.Src),
			Off: ins.Offset,
			Imm: ins.Constant,
			Ref: ins.Reference(),
			Sym: ins.Symbol(),
		})
	}
	return out
}

// variables: cilium/ebpf 0.9.1 has no VariableSpec; a variable is a VarSecinfo of the BTF
// datasec that describes a data-section map of the spec.
func variables(spec *ebpf.CollectionSpec) map[string]varJSON {
	out := map[string]varJSON{}
	if spec.Types == nil {
		return out
	}
	iter := spec.Types.Iterate()
	for iter.Next() {
		ds, ok := iter.Type.(*btf.Datasec)
		if !ok {
			continue
		}
		if _, isMap := spec.Maps[ds.Name]; !isMap {
			continue
		}
		for _, vsi := range ds.Vars {
			v, ok := vsi.Type.(*btf.Var)
			if !ok {
				continue
			}
			name := v.Name
			if _, dup := out[name]; dup {
				name = ds.Name + "/" + name
			}
			out[name] = varJSON{Section: ds.Name, Offset: vsi.Offset, Size: vsi.Size}
		}
	}
	return out
}

func xlated(p *ebpf.Program) (string, error) {
	info, err := p.Info()
	if err != nil {
		return "", err
	}
	insns, err := info.Instructions()
	if err != nil {
		return "", err
	}
	var buf bytes.Buffer
	for i, ins := range insns {
		if _, err := ins.Marshal(&buf, binary.LittleEndian); err != nil {
			return "", fmt.Errorf("instruction %d: %w", i, err)
		}
	}
	return hex.EncodeToString(buf.Bytes()), nil
}

// mapShapes: the maps a loaded program uses, by id (they are gone once the harness exits).
func mapShapes(p *ebpf.Program) (map[string][]uint32, error) {
	info, err := p.Info()
	if err != nil {
		return nil, err
	}
	ids, _ := info.MapIDs()
	out := map[string][]uint32{}
	for _, id := range ids {
		m, err := ebpf.NewMapFromID(id)
		if err != nil {
			return nil, fmt.Errorf("map %d: %w", id, err)
		}
		mi, err := m.Info()
		m.Close()
		if err != nil {
			return nil, fmt.Errorf("map %d: %w", id, err)
		}
		out[strconv.Itoa(int(id))] = []uint32{
			uint32(mi.Type), mi.KeySize, mi.ValueSize, mi.MaxEntries, mi.Flags,
		}
	}
	return out, nil
}

func loaded(p *ebpf.Program) loadJSON {
	x, err := xlated(p)
	if err != nil {
		return loadJSON{OK: false, Error: "xlated: " + err.Error()}
	}
	maps, err := mapShapes(p)
	if err != nil {
		return loadJSON{OK: false, Error: "maps: " + err.Error()}
	}
	return loadJSON{OK: true, Xlated: x, Maps: maps}
}

func sortedPrograms(spec *ebpf.CollectionSpec) []string {
	names := make([]string, 0, len(spec.Programs))
	for name := range spec.Programs {
		names = append(names, name)
	}
	sort.Strings(names)
	return names
}

// loadOne loads one program with LoadAndAssign (and only the maps it needs) through a
// struct type built at run time: { P *ebpf.Program `ebpf:"NAME"` }.
func loadOne(spec *ebpf.CollectionSpec, name string, opts *ebpf.CollectionOptions) loadJSON {
	typ := reflect.StructOf([]reflect.StructField{{
		Name: "P",
		Type: reflect.TypeOf((*ebpf.Program)(nil)),
		Tag:  reflect.StructTag(`ebpf:"` + name + `"`),
	}})
	target := reflect.New(typ)
	if err := spec.LoadAndAssign(target.Interface(), opts); err != nil {
		return loadJSON{OK: false, Error: err.Error()}
	}
	prog := target.Elem().Field(0).Interface().(*ebpf.Program)
	defer prog.Close()
	return loaded(prog)
}

func run(path, pinPath string) (res resultJSON) {
	res.Path = path
	defer func() {
		if r := recover(); r != nil {
			res.SpecError = fmt.Sprintf("panic: %v", r)
			res.Spec, res.Load, res.Programs = nil, nil, nil
		}
	}()
	spec, err := ebpf.LoadCollectionSpec(path)
	if err != nil {
		res.SpecError = err.Error()
		return res
	}
	out := &specJSON{
		Maps:      map[string]mapJSON{},
		Programs:  map[string]progJSON{},
		Variables: variables(spec),
	}
	for name, m := range spec.Maps {
		out.Maps[name] = *describeMap(m)
	}
	for name, p := range spec.Programs {
		out.Programs[name] = describeProgram(p)
	}
	res.Spec = out

	if err := os.MkdirAll(pinPath, 0o700); err != nil {
		res.Load = &loadJSON{OK: false, Error: err.Error()}
		return res
	}
	opts := &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: pinPath}}
	res.Programs = map[string]loadJSON{}
	coll, err := ebpf.NewCollectionWithOptions(spec.Copy(), *opts)
	if err == nil {
		defer coll.Close()
		res.Load = &loadJSON{OK: true}
		for name, prog := range coll.Programs {
			res.Programs[name] = loaded(prog)
		}
		return res
	}
	res.Load = &loadJSON{OK: false, Error: err.Error()}
	for _, name := range sortedPrograms(spec) {
		res.Programs[name] = loadOne(spec.Copy(), name, opts)
	}
	return res
}

func main() {
	if len(os.Args) < 3 {
		fmt.Fprintln(os.Stderr, "usage: cilium_load PIN_ROOT OBJ...")
		os.Exit(2)
	}
	_ = rlimit.RemoveMemlock() // a no-op where memory is charged to the memcg
	enc := json.NewEncoder(os.Stdout)
	for i, path := range os.Args[2:] {
		pinPath := filepath.Join(os.Args[1], strconv.Itoa(i))
		if err := enc.Encode(run(path, pinPath)); err != nil {
			fmt.Fprintln(os.Stderr, "encode:", strings.TrimSpace(err.Error()))
			os.Exit(1)
		}
	}
}
