"""recbole-llm: generative LLM recommenders (BIGRec, D3, CFT, CETRec, IGD) as a RecBole plugin."""

import warnings

# RecBole 1.2.1 uses pandas idioms that pandas 2.x flags as future changes (we pin pandas<3, where they
# still work); the warnings are RecBole's, not the user's, so keep the logs readable.
warnings.filterwarnings("ignore", category=FutureWarning, module=r"recbole\.")

__version__ = "0.1.0"
