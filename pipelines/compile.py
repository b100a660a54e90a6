"""``recpipe compile``: write the pipelines' KFP IR YAML (cluster builds)."""
import os

from kfp import compiler

from recpipe.pipelines import PIPELINES, BuildOptions


def compile_pipelines(which: str = "all", output_dir: str = "pipelines-yaml", *, gpu: bool = False,
                      mlflow_uri: str = BuildOptions.mlflow_uri) -> list[str]:
    """Compiles ``which`` (a pipeline name or ``"all"``) into ``output_dir/<name>.yaml``; returns the paths."""
    names = sorted(PIPELINES) if which == "all" else [which]
    unknown = set(names) - set(PIPELINES)
    if unknown:
        raise ValueError(f"unknown pipeline(s) {sorted(unknown)}; choose from {sorted(PIPELINES)}")
    os.makedirs(output_dir, exist_ok=True)
    opts = BuildOptions(gpu=gpu, mlflow_uri=mlflow_uri)
    paths = []
    for name in names:
        path = os.path.join(output_dir, f"{name}.yaml")
        compiler.Compiler().compile(PIPELINES[name](opts), path)
        paths.append(path)
    return paths
