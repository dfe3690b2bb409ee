#!/usr/bin/python3
"""cu2cpp.py -- the tiny preprocessing step that turns a .cu file into C++ for the CUDA emulator.

Usage: cu2cpp.py IN.cu OUT.cpp

Three rewrites, nothing else (every other line of the source is compiled as it is, with the
emulator's headers in tests/cuda-emu/include/ standing in for CUDA's):

  kernel<<<grid, block[, smem[, stream]]>>>(args)
      -> ::cel_emu::launch("kernel", kernel, ::cel_emu::cfg(grid, block, ...), args)
  extern __shared__ T name[];
      -> T *name = static_cast<T *>(::cel_emu::shared_dynamic());
  __shared__ T a[N], b;          (a block's static shared variables)
      -> one reference per declarator into the block's shared arena:
         static char a__cel_emu_key; T (&a)[N] = *static_cast<T (*)[N]>(
             ::cel_emu::shared_static(&a__cel_emu_key, sizeof(T[N]), alignof(T[N])));

Replacements never add or remove a newline, and the output starts with a #line directive,
so compiler messages and debug line tables point at the .cu file. Comments, string and
character literals are skipped. Anything it cannot parse is an error (exit 2), never a
silent pass-through. Test code only: the product is built by nvcc.
"""
import re
import sys


class CuError(Exception):
    pass


def code_mask(src):
    """A list of booleans: True where src[i] is code (not a comment or a literal)."""
    mask = [True] * len(src)
    i, n = 0, len(src)
    while i < n:
        c = src[i]
        if src.startswith("//", i):
            j = src.find("\n", i)
            j = n if j < 0 else j
            for k in range(i, j):
                mask[k] = False
            i = j
        elif src.startswith("/*", i):
            j = src.find("*/", i + 2)
            if j < 0:
                raise CuError("unterminated comment")
            for k in range(i, j + 2):
                mask[k] = False
            i = j + 2
        elif c in "\"'":
            j = i + 1
            while j < n and src[j] != c:
                j += 2 if src[j] == "\\" else 1
            for k in range(i, min(j + 1, n)):
                mask[k] = False
            i = j + 1
        else:
            i += 1
    return mask


def line_of(src, pos):
    return src.count("\n", 0, pos) + 1


def match_forward(src, mask, pos, open_c, close_c):
    """Index just past the bracket that closes the one at pos."""
    depth = 0
    for i in range(pos, len(src)):
        if not mask[i]:
            continue
        if src[i] == open_c:
            depth += 1
        elif src[i] == close_c:
            depth -= 1
            if depth == 0:
                return i + 1
    raise CuError(f"line {line_of(src, pos)}: no closing {close_c!r}")


def callee_start(src, mask, end):
    """Start of the kernel expression that ends just before `end` (before <<<): an
    identifier, possibly qualified, possibly with template arguments."""
    i = end
    while i > 0 and src[i - 1].isspace():
        i -= 1
    if i > 0 and src[i - 1] == ">":  # template arguments: walk back to the matching <
        depth = 0
        j = i - 1
        while j >= 0:
            if mask[j]:
                if src[j] == ">":
                    depth += 1
                elif src[j] == "<":
                    depth -= 1
                    if depth == 0:
                        break
            j -= 1
        if j < 0:
            raise CuError(f"line {line_of(src, end)}: unbalanced template arguments")
        i = j
        while i > 0 and src[i - 1].isspace():
            i -= 1
    j = i
    while j > 0 and (src[j - 1].isalnum() or src[j - 1] in "_:"):
        j -= 1
    if j == i:
        raise CuError(f"line {line_of(src, end)}: no kernel name before <<<")
    return j


def split_top(text, sep=","):
    """Splits on sep outside brackets."""
    parts, depth, cur = [], 0, []
    for c in text:
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        if c == sep and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
    parts.append("".join(cur))
    return parts


def rewrite_launches(src):
    pos = 0
    while True:
        mask = code_mask(src)
        k = src.find("<<<", pos)
        while k >= 0 and not mask[k]:
            k = src.find("<<<", k + 3)
        if k < 0:
            return src
        name0 = callee_start(src, mask, k)
        cfg_end = src.find(">>>", k + 3)
        if cfg_end < 0:
            raise CuError(f"line {line_of(src, k)}: <<< without >>>")
        cfg = src[k + 3:cfg_end]
        j = cfg_end + 3
        while j < len(src) and src[j].isspace():
            j += 1
        if j >= len(src) or src[j] != "(":
            raise CuError(f"line {line_of(src, k)}: no argument list after >>>")
        args_end = match_forward(src, mask, j, "(", ")")
        args = src[j + 1:args_end - 1]
        callee = src[name0:k].rstrip()
        pretty = " ".join(callee.split())
        call = (f'::cel_emu::launch("{pretty}", {callee}, ::cel_emu::cfg({cfg})'
                + (f",{args})" if args.strip() else ")"))
        # keep the line count: newlines the rewrite dropped go after the call
        gap = src.count("\n", name0, args_end) - call.count("\n")
        src = src[:name0] + call + "\n" * gap + src[args_end:]
        pos = name0 + len(call)


DECL = re.compile(r"\s*([A-Za-z_]\w*)\s*((?:\[[^\]]*\]\s*)*)$")


def rewrite_shared(src):
    mask = code_mask(src)
    out, pos = [], 0
    for m in re.finditer(r"\b(extern\s+)?__shared__\b", src):
        if not mask[m.start()] or m.start() < pos:
            continue
        semi = src.find(";", m.end())
        if semi < 0:
            raise CuError(f"line {line_of(src, m.start())}: __shared__ without ;")
        body = src[m.end():semi]
        body = re.sub(r"__align__\s*\(\s*\d+\s*\)", "", body)
        nl = body.count("\n")
        ln = line_of(src, m.start())
        if m.group(1):  # extern __shared__ T name[];
            d = re.fullmatch(r"\s*(.+?)\s+([A-Za-z_]\w*)\s*\[\s*\]\s*", body, re.S)
            if not d:
                raise CuError(f"line {ln}: cannot parse dynamic shared declaration {body!r}")
            t, name = " ".join(d.group(1).split()), d.group(2)
            rep = f"{t} *{name} = static_cast<{t} *>(::cel_emu::shared_dynamic())"
        else:
            decls = split_top(body)
            first = re.fullmatch(r"\s*(.*?[\w>*&\s])\s*([A-Za-z_]\w*\s*(?:\[[^\]]*\]\s*)*)", decls[0],
                                 re.S)
            if not first:
                raise CuError(f"line {ln}: cannot parse shared declaration {body!r}")
            t = " ".join(first.group(1).split())
            names = [first.group(2)] + decls[1:]
            reps = []
            for dtext in names:
                d = DECL.fullmatch(dtext.replace("\n", " "))
                if not d or "=" in dtext:
                    raise CuError(f"line {ln}: cannot parse shared declarator {dtext!r}")
                name, dims = d.group(1), "".join(d.group(2).split())
                full = f"{t}{dims}"
                ref = f"{t} (&{name}){dims}" if dims else f"{t} &{name}"
                ptr = f"{t} (*){dims}" if dims else f"{t} *"
                reps.append(f"static char {name}__cel_emu_key; {ref} = *static_cast<{ptr}>("
                            f"::cel_emu::shared_static(&{name}__cel_emu_key, sizeof({full}), "
                            f"alignof({full})))")
            rep = "; ".join(reps)
        out.append(src[pos:m.start()])
        out.append(rep + "\n" * nl)
        pos = semi
    out.append(src[pos:])
    return "".join(out)


def convert(src):
    return rewrite_shared(rewrite_launches(src))


def main(argv):
    if len(argv) != 3:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    with open(argv[1], encoding="utf-8") as f:
        src = f.read()
    try:
        out = convert(src)
    except CuError as e:
        print(f"{argv[1]}: cu2cpp: {e}", file=sys.stderr)
        return 2
    assert out.count("\n") == src.count("\n"), "cu2cpp changed the line count"
    with open(argv[2], "w", encoding="utf-8") as f:
        f.write(f'#line 1 "{argv[1]}"\n' + out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
